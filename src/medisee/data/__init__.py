"""medisee.data."""
