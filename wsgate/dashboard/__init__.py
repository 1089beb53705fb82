"""The operator dashboard (`dashboard.enabled`), all in this package.

- `sessions`: logins (password or admin JWT) and the operator identity they give a WebSocket;
- `plugin`: the built-in `dashboard` plugin: operator message types and live figures, through the
  public plugin API only;
- `web`: the HTTP side (page, login, logout, static files);
- `static/`: the page, its script, styles and chart.
"""
