"""The API and webhook server: the app, one module per route group, and the stores behind them."""
