"""The dashboard: a static page served at ``/`` that reads only through the REST API."""
