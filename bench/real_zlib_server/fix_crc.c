/* A "fixed" crc32 for the demonstration: recognisable result. */
unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len)
{
    (void)crc; (void)buf;
    return 0x0B0B0000UL + len;
}
