"""rakis node package."""
