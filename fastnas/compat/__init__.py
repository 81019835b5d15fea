"""Drop-in replacements for the model classes of DARTS-era research code (``from fastnas.compat.darts
import Network`` instead of ``from model_search import Network``)."""
