print("lunbridge")
