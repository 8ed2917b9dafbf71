"""Services: the domain logic over the index, the models, the media store and the database; the API's routes and
the workers' tasks are thin layers over these."""
