// Starts Swagger UI on /docs, as FastAPI's own page does, from a file the API serves: the page's
// Content-Security-Policy then allows no inline script. No validator: it would send the schema
// to validator.swagger.io.
"use strict";
window.ui = SwaggerUIBundle({
  url: new URL("/openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
