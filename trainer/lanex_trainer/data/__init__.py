"""TuSimple-format data: synthetic generation, download, preparation and the training dataset."""
