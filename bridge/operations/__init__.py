"""What operators run against a deployment: the doctor's checks and ending a user's sessions.

May import the factory, the adapters and everything below.
"""
