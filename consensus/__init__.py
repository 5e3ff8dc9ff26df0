"""rakis consensus package."""
