"""Objects, scenes and augmentation for training and testing on synthetic data (no ROS imports)."""
