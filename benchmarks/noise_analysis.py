def print_all(out, names):
    print("analysis: not yet")
