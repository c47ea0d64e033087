"""SCNN lane-detection models: backbones, spatial message passing and heads."""
