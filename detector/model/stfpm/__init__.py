"""STFPM (Student-Teacher Feature Pyramid Matching, Wang et al., BMVC 2021): backbones, model, loss, maps."""
