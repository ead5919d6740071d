"""TeachText data: the retrieval split container and .npz format, the embedded generator and
the official CE / TeachText feature archives."""
