"""Released models: ``medisee release`` builds one (``build``), writes its model card
(``card``) and the check that CI re-scores (``check``). Loading lives in
``medisee.model.released``."""
