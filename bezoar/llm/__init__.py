"""Model backends behind one protocol, a persistent call cache, and the spec syntax that names them."""
