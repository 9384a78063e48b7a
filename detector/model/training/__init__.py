"""Training: recipes, automatic recipe choice on synthetic or real defects, STFPM training and recalibration."""
