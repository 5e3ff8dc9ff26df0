"""rakis engine package."""
