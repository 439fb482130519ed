"""medisee.serve."""
