"""Web layer: observations (accessibility trees) and actions."""
