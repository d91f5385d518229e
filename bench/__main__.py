print("bench stub")
