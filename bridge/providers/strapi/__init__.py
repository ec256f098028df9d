"""Strapi as a source of identities: the jwt the users-permissions plugin signed, verified with
Strapi's secret (`jwt.py`), and the subject token type it travels as (`tokens.py`)."""
