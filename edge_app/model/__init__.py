"""The shipped model at run time: manifest, detector and classifier on a backend."""
