"""medisee.model."""
