"""Values and rules every layer shares: the one error tree, the model, JWT claim checks. Standard library
only (a test holds it).
"""
