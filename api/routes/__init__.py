"""One router per resource; each route parses its input, calls one function, returns its result."""
