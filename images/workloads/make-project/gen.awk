# Writes unit.c: f functions of straight-line integer arithmetic, with no
# #include, so that tcc compiles it alone. Each unit of the project is this
# file compiled with its own -DUNIT= prefix on the function names.
BEGIN {
  srand(11)
  print "#define CAT2(a, b) a##b"
  print "#define CAT(a, b) CAT2(a, b)"
  print "#define FN(k) CAT(UNIT, k)"
  for (k = 0; k < f; k++) {
    printf "unsigned long FN(f%d)(unsigned long x, unsigned long y)\n{\n", k
    for (s = 0; s < 40; s++)
      printf "  x = (x * %d + y) ^ (y >> %d); y += x %% %d;\n", int(rand() * 1000) + 1, int(rand() * 13) + 1, int(rand() * 97) + 1
    print "  return x + y;\n}"
  }
  print "unsigned long FN(sum)(unsigned long x)\n{\n  unsigned long y = 0;"
  for (k = 0; k < f; k++)
    printf "  y += FN(f%d)(x, y);\n", k
  print "  return y;\n}"
}
