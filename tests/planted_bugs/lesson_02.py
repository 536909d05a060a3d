"""Typical bugs planted into lesson 02's exercises: each must make its check print FAIL."""

BUGS = {
    "2.5": [
        ("owner = array if array.base is None else array.base", "owner = array",
         "views counted as separate memory, so shared bytes count twice"),
        ('owners[id(owner)] = getattr(owner, "nbytes", array.nbytes)', "owners[id(owner)] = array.nbytes",
         "a view counts only its own bytes, not the whole buffer it keeps alive"),
        ('getattr(owner, "nbytes", array.nbytes)', "owner.nbytes",
         "an owner without nbytes (bytes under np.frombuffer) is not handled"),
    ],
}
