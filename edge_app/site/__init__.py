"""Site adaptation of the classifier: a small head fitted on cells a technician verified.

``head`` fits and applies the head (numpy only), ``profile`` is the versioned
folder it ships in, ``cells`` reads verified cells from a labels CSV or the store.
"""
