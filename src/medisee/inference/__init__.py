"""medisee.inference."""
