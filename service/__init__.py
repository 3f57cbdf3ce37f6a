"""The service half of hpsearch: the REST API, the database, the Optuna bridge and scheduling.

Never imports ``trainer``, TensorFlow or Keras: workers talk to it over HTTP.
"""
