"""medisee.train."""
