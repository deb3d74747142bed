"""Side effects, one module per channel (email over SMTP, voice over Twilio).

Each activity takes one ``...Input`` model and returns one ``...Result`` model.
"""
