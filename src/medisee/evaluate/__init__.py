"""medisee.evaluate."""
