"""rakis kernels package."""
