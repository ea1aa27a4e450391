"""One module per model family of the offline dummy model folders, plus the tokenizer and config pieces
they share; ``worker.devtools.dummy_model`` is the entry point."""
