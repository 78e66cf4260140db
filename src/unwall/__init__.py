"""unwall: a censorship-circumvention bridge."""

import warnings

__version__ = "0.1.0"

# pyOpenSSL 26.4 (which aiortc and aioquic import) names cryptography's DSA key types when it
# is imported, and cryptography 51 warns that DSA is deprecated: two lines of noise on every
# start, about a key type unwall never uses. Drop this when pyOpenSSL stops naming DSA.
warnings.filterwarnings("ignore", message="DSA is deprecated", module="OpenSSL")
