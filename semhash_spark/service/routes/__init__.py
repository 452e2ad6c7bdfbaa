"""HTTP routes, one small module each; HTTP errors are raised here and nowhere else."""
