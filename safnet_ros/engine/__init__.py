"""Engine: training, evaluation and inference over chunks and whole scenes."""
