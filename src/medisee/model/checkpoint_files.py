"""The file names of a checkpoint directory, shared by every writer and reader
(``MediSee.save_pretrained``, ``medisee.model.export``, ``medisee.model.released``).

A leaf module, so that the loaders can name the files without importing each other.
"""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
#: an export's HF LLaVA directory (``medisee.model.export``)
LANGUAGE_MODEL_DIR = "language_model"
#: a release's record (``medisee.model.released``)
RELEASE_FILE = "release.json"
