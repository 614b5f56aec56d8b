"""Reading digits: image preprocessing, the Predictor, evaluation of a checkpoint, export."""
