"""Training loops: offline (batches from files) and, later, online (batches from sampling)."""
