"""Where tracks come from: one module per server family behind one small interface."""
