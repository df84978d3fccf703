from latentforge.peers.autoencoders import PeerFormatError, detect_format, load_autoencoder  # noqa: F401
from latentforge.peers.dit import load_dit  # noqa: F401
