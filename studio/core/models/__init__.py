"""Loading models from files, and the example inputs that trace them."""
