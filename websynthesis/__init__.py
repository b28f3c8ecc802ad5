"""websynthesis."""
