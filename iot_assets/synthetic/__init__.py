"""Generated sample data for tests and demos: no downloaded data needed."""
