"""The stages of one run: settings resolved once, the pipeline (connect, load data, search, retrain), the
retraining's outputs, out-of-domain scoring, and the manifest through which each stage hands over to the next."""
