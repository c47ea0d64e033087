"""The TuSimple lane metric and the post-processing from probability maps to lanes."""
