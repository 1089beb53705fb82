"""Built-in plugins: the spec's behaviour, registered like any third-party plugin."""
