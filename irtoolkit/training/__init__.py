"""What a model uses around its iterations but is not a model: the non-finite guard and validation on image
pairs."""
