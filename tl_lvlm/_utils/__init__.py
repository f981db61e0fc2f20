"""Small helpers every layer may use: hook lists, tensor gathers, JSON and atomic files,
fingerprints. Imports nothing else of tl-lvlm."""
